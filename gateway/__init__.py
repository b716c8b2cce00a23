"""runed package."""
