// Tests for AftercareDeliveryTests are added with the work they prove.
import Testing
