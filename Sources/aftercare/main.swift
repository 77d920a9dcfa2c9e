print("aftercare")
