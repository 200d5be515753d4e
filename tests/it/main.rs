mod cis;
