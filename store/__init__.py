"""sealtree's repository layer: objects, trees, commits, refs, fs-verity."""
