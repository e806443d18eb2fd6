"""The torch-free core every room builds on: the spec registry, typed configs, weight resolution (hub,
local dirs, offline mode), atomic file writes, device choice and shared path rules. Nothing heavy here."""
