"""The local cloud: emulators on loopback and the seeded overseas estate."""
