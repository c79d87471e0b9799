"""Embed once: every photo's backbone features computed once into a store, reused by every later decision."""
