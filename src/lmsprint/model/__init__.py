"""lmsprint.model"""
