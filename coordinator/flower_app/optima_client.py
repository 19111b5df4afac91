"""Flower ClientApp entry point: the site agent's code from the installed package."""

from site_agent.client_app import app as client_app

app = client_app
