"""tunerkit_plugins.parallel"""
