"""What Pairwell keeps: the database's typed models, the Redis cache and limits, the files of each shop's
artifacts and reports."""
