"""Reading instance log files: backwards tails, forward reads after a position, and live following."""
