"""tunerkit_plugins.speed"""
