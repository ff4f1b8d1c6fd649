"""Local stand-ins for the cloud: real servers on loopback, for `make up`/`make demo` and the tests."""
