
mod inventory;
