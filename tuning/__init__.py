"""headsweep's training side: data, device loader, engine, and the Ray Tune search."""
