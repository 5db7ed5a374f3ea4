"""Tests of the clients in clients/."""
