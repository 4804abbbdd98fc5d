"""Training for the ride-duration model (not deployed with the function)."""
