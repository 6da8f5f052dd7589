"""Command-line pieces every fedmq command shares: the broker flags and the terminal console."""
