"""lmsprint.data"""
