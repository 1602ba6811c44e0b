"""Asterisk REST Interface: the client rtcore drives Asterisk with, the start-up checks of an
Asterisk (preflight), and Asterisk's sound file formats."""
