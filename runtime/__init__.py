"""The floor below the services: small runtime helpers every service process shares (status and
metrics server, interpreter tuning, the one logging set-up). Imports nothing from the services or the
application shell."""
