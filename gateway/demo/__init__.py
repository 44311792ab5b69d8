"""The demo: two small upstream apps that trust X-User-Id, and the runner behind `gateway demo`."""
