"""Shared mechanics, the bottom layer: the registry every kind uses and option validation.

Imports nothing of the project; everything else may import it.
"""
