"""tunerkit_plugins.data"""
