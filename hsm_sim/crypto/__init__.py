"""Pure payment cryptography: bytes in, bytes out, no key store and no I/O."""
