"""lmsprint.train"""
