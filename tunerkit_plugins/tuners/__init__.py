"""tunerkit_plugins.tuners"""
