"""(family: reductions) -- rules are added here."""
