"""Masking: the masking functions and the policy that decides each face's mask (policies/ holds the versioned policy
files)."""
