"""lmsprint.optim"""
