"""TFX pipeline wiring, configuration and runners."""
