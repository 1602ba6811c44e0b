"""Asterisk REST Interface: the client rtcore drives Asterisk with."""
