"""rethink_tf."""
