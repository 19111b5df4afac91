"""Flower ServerApp entry point: the coordinator's code from the installed package."""

from coordinator.server_app import app as server_app

app = server_app
