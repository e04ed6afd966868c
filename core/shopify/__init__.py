"""Shopify access: the Admin GraphQL client, the signatures of every signed surface, webhook topics, shops'
tokens, and the sync that brings a store's catalog and orders in."""
