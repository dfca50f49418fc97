// The classic tar.gz codec.
