mod render;
mod systemd;
