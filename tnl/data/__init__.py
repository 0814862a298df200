"""tnl.data"""
