"""IO managers: the one place where a file stream becomes an object in storage."""
