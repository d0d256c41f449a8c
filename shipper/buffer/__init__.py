"""The buffer between reading and sending: bounded, with explicit acks and one cursor per sink."""
