"""lmsprint.track"""
