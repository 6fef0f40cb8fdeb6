"""tunerkit_plugins.quant"""
