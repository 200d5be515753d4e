mod inventory;
