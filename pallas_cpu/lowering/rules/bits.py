"""(family: bits) -- rules are added here."""
