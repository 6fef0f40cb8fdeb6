"""tunerkit_plugins._helpers"""
