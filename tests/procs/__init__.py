"""Helper scripts that tests run as real, separate processes."""
