"""Training: the step (engine), optimizer and schedule (optim), the loop (trainer)."""
