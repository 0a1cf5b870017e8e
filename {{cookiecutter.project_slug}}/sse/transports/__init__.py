"""HTTP: the endpoint every transport shares, its connections, Daphne's internals, and the two thin transports."""
