"""tunerkit_plugins.observe"""
