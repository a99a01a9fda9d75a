"""(family: random) -- rules are added here."""
