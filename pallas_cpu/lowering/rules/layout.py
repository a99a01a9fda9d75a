"""(family: layout) -- rules are added here."""
