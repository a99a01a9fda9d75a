"""(family: dot) -- rules are added here."""
