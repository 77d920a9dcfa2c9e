// Tests for AftercareStoreTests are added with the work they prove.
import Testing
