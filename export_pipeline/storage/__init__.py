"""Where export files go: object keys, and sinks that publish an object only when complete."""
